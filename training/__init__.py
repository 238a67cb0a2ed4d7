"""Training the project's plate recogniser (`python -m training.train`); not imported by `anpr`."""
