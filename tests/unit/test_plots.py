"""The job plots draw whatever the user named its classes."""

import io

from PIL import Image

from app.jobs import plots


def test_class_names_with_mathtext_characters_are_drawn_as_text() -> None:
    # Folder names such as these made matplotlib's mathtext parser raise when saving: a 500.
    classes = ["a${$b", "x$^$", r"\frac{", "plain"]
    evaluation = {
        "confusion_matrix": [[1 if i == j else 0 for j in range(4)] for i in range(4)],
        "classes": classes,
        "split": "val",
        "accuracy": 1.0,
    }
    png = plots.confusion("job_x", evaluation)
    assert Image.open(io.BytesIO(png)).format == "PNG"
