"""What Fashion-MNIST is: its classes, image size, pixel statistics, files and their checksums.

Every other module takes these facts from here, so a number such as the data set's mean is
written down once.
"""

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28

# Fashion-MNIST's own pixel statistics over the 60,000 training images (on the 0..1 scale).
# MNIST's 0.1307/0.3081 are a common copy-paste mistake: they are the wrong data set.
MEAN = 0.2860
STD = 0.3530

# Training images held out for model selection, and the seed that picks them.
VAL_SIZE = 5000
SPLIT_SEED = 0

# File stem -> what it holds. Each may be stored as `.gz` or decompressed.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# SHA-256 of each file's *decompressed* content. Debian recompresses the .gz files, so their own
# checksums differ from the official ones while the images are the same; the content is what counts.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# Length of each decompressed file: the header (4 bytes + 4 per dimension) and one byte per value.
SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * IMAGE_SIZE * IMAGE_SIZE,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * IMAGE_SIZE * IMAGE_SIZE,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}
