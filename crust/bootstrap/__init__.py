"""Sans-IO bootstrap: which contacts to try, in what order, and when to stop."""
