"""seg-client: webcam / video demo client for seg-service (OpenCV capture, WebSocket streaming, overlay)."""

import os

# OpenCV prints multi-line warnings when a camera cannot be opened; the client prints its own one-line
# error instead. Set before the first `import cv2`; users can still set OPENCV_LOG_LEVEL themselves.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"
