"""HTTP and WebSocket routes of the segmentation service."""
