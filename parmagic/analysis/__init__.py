"""Reading the cell before anything runs: its loop found and checked, what the body and the
notebook functions it calls do, what the kernel's objects hold, the item function written.
Pure: it reads code and objects and changes nothing in the kernel."""
