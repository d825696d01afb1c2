"""Inspector: visual anomaly inspection for production lines."""

import os

__version__ = "0.2.0"

# OpenCV and its FFmpeg back end print their own warnings ("can't open camera by index", "[mjpeg @
# 0x…] error y=2") straight to stderr.  Inspector reports those failures itself, in sentences, so
# their lines are silenced before cv2 is first imported (a user's own setting is kept).
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")   # AV_LOG_QUIET
