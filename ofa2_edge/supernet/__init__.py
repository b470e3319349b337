"""The elastic OFA-MobileNetV3 supernet, checkpoint loading, subnet extraction, BN recalibration."""

from ofa2_edge.supernet.calibration import noise_batches, recalibrate_bn
from ofa2_edge.supernet.checkpoint import load_supernet
from ofa2_edge.supernet.network import Supernet
from ofa2_edge.supernet.static import StaticSubnet

__all__ = ["Supernet", "StaticSubnet", "load_supernet", "noise_batches", "recalibrate_bn"]
