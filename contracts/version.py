"""The installed package's version, which the CLI prints and the server reports."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """``ccd-recommender``'s version, or ``0+unknown`` from a source tree never installed."""
    try:
        return version("ccd-recommender")
    except PackageNotFoundError:
        return "0+unknown"
