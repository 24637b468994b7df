"""conceptmine: concept-based, explainable mining of rare objects in nuScenes camera frames."""

__version__ = "0.1.0"
