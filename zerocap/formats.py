"""The files zerocap reads, by name: what a folder scan takes and how a message names them. Light
(no imaging library): the command line, the modes and the input scan read it before anything loads."""

IMAGE_FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")  # what a folder scan takes
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".ogv")
