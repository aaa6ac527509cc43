"""Face landmarks -> mouth ROI for raw face-track videos (LRS2/LRS3): detectors.py (mediapipe, dlib),
landmarks.py (interpolation, smoothing, precomputed tracks), align.py (mean-face similarity
transform, mouth crop), face_video_prep.py (the stage 2 modes mediapipe / dlib / landmarks)."""
