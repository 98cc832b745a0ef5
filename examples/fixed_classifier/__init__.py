"""The paper-reproduction example: learned vs fixed classifiers on Fashion-MNIST.

Run it with ``python examples/fashion_mnist.py --help``.
"""
