"""tunelab: adapt a pretrained language model to your task with prompt engineering, parameter-efficient
fine-tuning or full fine-tuning — and measure which one to use.

The API's front door: each function imports its module when called, on purpose, so that `import tunelab` (and
`tunelab.version` for a run's metadata) loads no torch."""
from .version import __version__  # noqa: F401


def train(*args, **kwargs):
    """See `tunelab.api.train`."""
    from .api import train as _train
    return _train(*args, **kwargs)


def evaluate(*args, **kwargs):
    """See `tunelab.api.evaluate`."""
    from .api import evaluate as _evaluate
    return _evaluate(*args, **kwargs)


def predict(*args, **kwargs):
    """See `tunelab.api.predict`."""
    from .api import predict as _predict
    return _predict(*args, **kwargs)


def load_config(*args, **kwargs):
    """See `tunelab.settings.load_config`."""
    from .settings import load_config as _load
    return _load(*args, **kwargs)


def compare(*args, **kwargs):
    """See `tunelab.comparison.compare`: train several methods on the same splits; returns the table."""
    from .comparison import compare as _compare
    return _compare(*args, **kwargs)


def tune(*args, **kwargs):
    """See `tunelab.api.tune`: search one method's hyper-parameters with Optuna, then train the best setting."""
    from .api import tune as _tune
    return _tune(*args, **kwargs)


def estimate(*args, **kwargs):
    """See `tunelab.estimate.estimate`: trainable weights, peak memory and time of each method, before training."""
    from .estimation import estimate as _estimate
    return _estimate(*args, **kwargs)
