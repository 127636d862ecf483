"""The errors nanlab raises on purpose."""


class NanlabError(ValueError):
    """Bad input from the user: the message is one line saying what is wrong and what is valid."""
