"""The kernel's side of a run: the session's warm backends, the loop run on the backend chosen
(named, auto's, or each one compared), chunks out and results applied in item order."""
