"""Latent representations (tensors only): PCA, convolutional autoencoder,
VAE and SINR, behind one protocol (:mod:`xlatda.encoders.base`) and one
registry (``encoders``)."""

from xlatda.encoders.autoencoder import ConvAutoencoder, NeuralEncoder
from xlatda.encoders.base import Encoder, encoders
from xlatda.encoders.pca import PCA
from xlatda.encoders.sinr import SINR
from xlatda.encoders.training import area_weights, autodecode, train_module
from xlatda.encoders.vae import VAE

__all__ = [
    "PCA",
    "SINR",
    "VAE",
    "ConvAutoencoder",
    "Encoder",
    "NeuralEncoder",
    "area_weights",
    "autodecode",
    "encoders",
    "train_module",
]
