"""The kind of error a user can cause and fix: a bad file, flag, config or run folder, or a refused request."""


class InputError(Exception):
    """Its message says what is wrong and where (file:row:column, or the flag), one line per problem. The command line
    prints it and exits 2, without a traceback; any other exception is a bug and keeps its traceback."""

    def __reduce__(self):
        # a subclass made from a list of problems (ConfigError, RecipeError) is rebuilt from that list, not from the
        # joined text, so that it arrives whole from another process (a fold's Ray worker)
        problems = getattr(self, "problems", None)
        return type(self), (problems,) if problems is not None else self.args, self.__dict__
