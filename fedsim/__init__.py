"""fedsim: federated-learning simulations for privacy and safety research."""

__version__ = "0.1.0"
