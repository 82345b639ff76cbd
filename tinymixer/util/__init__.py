"""The helpers every layer of the package may use, at the bottom of it: files written atomically with the user's
umask (``files``), what the command-line programs share (``cli``), figures (``plots``), the programs' opt-in
process tuning (``host``). They import nothing of tinymixer but ``backend``."""
