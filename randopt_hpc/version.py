__version__ = "0.1.0"
SCHEMA_VERSION = 2   # 2: base samples, token accounting, random and σ-matched controls, exact ranking
