"""The ground floor: what every other part of Inspector may use (errors, paths, progress, atomic writes).

Nothing here imports OpenCV, torch or Qt.
"""
