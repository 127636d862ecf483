"""The errors nanlab raises on purpose."""


class NanlabError(ValueError):
    """Bad input from the user: the message is one line saying what is wrong and what is valid."""


class NonFiniteError(FloatingPointError):
    """Training went non-finite; ``.report`` (a ``nanlab.report.NonFiniteReport``) says where and why."""

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report
