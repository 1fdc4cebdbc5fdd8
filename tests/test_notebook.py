"""The Kaggle and Colab notebook, executed top to bottom in a kernel (nbclient) from a clone on the CPU, as a user
runs it: it installs, runs an experiment with `dvc exp run`, shows the experiments and the charts, and chats."""
import os

import nbformat
from nbclient import NotebookClient

from conftest import ROOT, run


def text_of(cell) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []))


def test_the_notebook_runs_top_to_bottom_on_the_embedded_default(pipeline_copy):
    os.symlink(ROOT / ".venv", pipeline_copy / ".venv")
    # Its `make install` must find the environment installed: one run in the copy would point the project's
    # editable install at a folder this test deletes.
    assert run(["make", "-q", "install"], pipeline_copy, check=False).returncode == 0, "make install is not up to date"
    notebook = nbformat.read(pipeline_copy / "notebooks/sft-dpo.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(pipeline_copy / "notebooks")}}).execute()
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert f"project: {pipeline_copy}" in text_of(cells[0])
    assert "no GPU: the embedded default []" in text_of(cells[2])
    shown = text_of(cells[4])
    assert "notebook" in shown and "BERTScore" in shown  # the experiment it ran, in tools.show's table
    images = [output for output in cells[5].outputs if "image/png" in output.get("data", {})]
    assert len(images) == 4
    assert text_of(cells[6]).strip()  # the model answered
    assert "notebook" in run(["dvc", "exp", "list", "--name-only"], pipeline_copy).stdout.split()
