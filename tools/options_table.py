"""Write the options table into the README from parmagic/options.py, the one place the
options are described (tests/test_layout.py checks that the README holds it)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from parmagic.options import options_table  # noqa: E402

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- options-table:begin -->\n", "<!-- options-table:end -->"

text = README.read_text()
head, rest = text.split(BEGIN)
_, tail = rest.split(END)
README.write_text(f"{head}{BEGIN}{options_table()}{END}{tail}")
print(f"wrote the options table into {README}")
