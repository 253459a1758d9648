"""pandas writes: `df[c] = v`, `.loc`, `.iloc`, `.at`, `.iat` and `series[k] = v` on
a kernel DataFrame or Series are recorded where the item runs and replayed in item order on the
kernel's own object, on every backend, as list and dict writes are."""

from __future__ import annotations

import pytest

pd = pytest.importorskip("pandas")

SETUP = "import time\nimport numpy as np\nimport pandas as pd\ndf = pd.DataFrame({'a': range(6)})\ns = pd.Series(np.zeros(6))\nframe_id, series_id = id(df), id(s)\n"
CELLS = {
    "loc-in-iterrows": "for i, row in df.iterrows():\n    time.sleep(0.002 * (i % 3))\n    df.loc[i, 'x'] = row['a'] * 2\n",
    "at-over-index": "for i in df.index:\n    df.at[i, 'a'] = i * 10\n",
    "iloc": "for j in range(6):\n    df.iloc[j, 0] = -j\n",
    "iat": "for j in range(6):\n    df.iat[j, 0] = j * 3\n",
    "new-columns": "for c in ['p', 'q', 'r']:\n    df[c] = np.arange(6) * len(c)\n",
    "series-item": "for j in range(6):\n    s[j] = j ** 2\n",
}


@pytest.mark.parametrize("cell", list(CELLS.values()), ids=list(CELLS))
def test_pandas_writes_end_as_in_the_plain_loop(ip, run, backend, cell):
    run(SETUP)
    plain: dict = {}
    exec(SETUP + cell, plain)
    outcome = run(f"%%parallel {backend} -q\n{cell}")
    assert outcome.error is None, outcome.out + outcome.err
    assert id(ip.user_ns["df"]) == ip.user_ns["frame_id"]  # the kernel's own objects
    assert id(ip.user_ns["s"]) == ip.user_ns["series_id"]
    pd.testing.assert_frame_equal(ip.user_ns["df"], plain["df"])
    pd.testing.assert_series_equal(ip.user_ns["s"], plain["s"])
