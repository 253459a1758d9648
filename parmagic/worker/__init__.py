"""What runs where the items run, worker processes included: the task and results that cross,
the chunk runners, what items print, their clocks, their recorded changes, the kernel's
objects as copies. Worker processes import these, so they import nothing heavy (no IPython,
psutil or tqdm: tests/test_layout.py checks)."""
