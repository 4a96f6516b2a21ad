"""The model: backbones, the SIT sequence model, and its task-to-factor graph."""
