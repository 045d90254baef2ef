"""The walkthrough notebook runs top to bottom on the real data, as a learner would run it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "walkthrough.ipynb"


def test_the_notebook_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_the_walkthrough_runs_top_to_bottom(real_data, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    # Every cell that draws shows its figure: fmnist, imported after pyplot, leaves the notebook's backend alone.
    drawing = [cell for cell in notebook.cells if cell.cell_type == "code" and "plt.subplots(" in cell.source]
    assert len(drawing) >= 4 and all(
        any("image/png" in output.get("data", {}) for output in cell.outputs) for cell in drawing)
    outputs = "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    assert "test accuracy" in outputs and "same as by hand: True" in outputs
    # The run as data: predict's arrays give the accuracy evaluate() reports.
    from_arrays, from_evaluate = re.search(r"accuracy from the arrays (\S+), evaluate\(\) (\S+)", outputs).groups()
    assert from_arrays == from_evaluate
