"""Face detection + landmarks for a clip: RGB frames -> 68 iBUG landmarks per frame (NaN where no face).

Two backends behind one interface (:class:`AbsFaceLandmarker`), both with their models inside
wheels (nothing is downloaded):

- ``mediapipe`` (default): MediaPipe Face Mesh (its face detector + 468-point mesh), in video
  (tracking) mode over the frames of one clip. The 468 mesh points are mapped to the 68-point
  iBUG layout with :data:`MEDIAPIPE_TO_IBUG68` (below).
- ``dlib``: dlib's HOG frontal-face detector on every frame + the 68-point shape predictor
  (``shape_predictor_68_face_landmarks.dat`` from the ``face-recognition-models`` wheel, or a
  path given with ``predictor_path``).

Only one face is kept per frame: the largest one (dlib) or the first (mediapipe, max_num_faces=1).
Heavy modules are imported in the constructors, so that other modes do not need them.
"""
import importlib.util
import os
from abc import ABC, abstractmethod
from typing import Dict, Iterable, Optional, Type

import numpy as np

from espnet_omni_avsr.prep.errors import PrepError

NUM_POINTS = 68

# MediaPipe Face Mesh index for each of the 68 iBUG points (dlib's order), chosen as the mesh
# vertex at the same anatomical place. "Right"/"left" are the subject's.
#   0-16 jaw line (right ear -> chin (8, mesh 152) -> left ear)
#   17-21 right brow, 22-26 left brow (outer -> inner / inner -> outer)
#   27-30 nose bridge (27 between the eyes, mesh 168; 30 the tip, mesh 4)
#   31-35 nose bottom (right alar -> subnasale (33, mesh 2) -> left alar)
#   36-41 right eye (36 outer corner, mesh 33; 39 inner corner, mesh 133)
#   42-47 left eye (42 inner corner, mesh 362; 45 outer corner, mesh 263)
#   48-59 outer lip (48 right corner, mesh 61; 51 top centre, mesh 0; 54 left corner, mesh 291;
#         57 bottom centre, mesh 17)
#   60-67 inner lip (60 right inner corner, mesh 78; 62 upper inner centre, mesh 13; 64 left inner
#         corner, mesh 308; 66 lower inner centre, mesh 14)
# The jaw and brow points are approximate (the mesh has no exact counterparts of dlib's jaw
# contour); the alignment uses only the eye corners, nose and mouth points, which match closely
# (tests/prep/test_face_detectors.py compares both backends on a real face photograph).
MEDIAPIPE_TO_IBUG68 = (
    127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,  # 0-16
    70, 63, 105, 66, 107,  # 17-21
    336, 296, 334, 293, 300,  # 22-26
    168, 197, 5, 4,  # 27-30
    75, 97, 2, 326, 305,  # 31-35
    33, 160, 158, 133, 153, 144,  # 36-41
    362, 385, 387, 263, 373, 380,  # 42-47
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # 48-59
    78, 82, 13, 312, 308, 317, 14, 87,  # 60-67
)
assert len(MEDIAPIPE_TO_IBUG68) == NUM_POINTS


class AbsFaceLandmarker(ABC):
    """RGB frames of one clip -> (T, 68, 2) float64 pixel coordinates (x, y); NaN rows where no
    face was found. A new clip must not depend on the previous one (trackers are reset)."""

    @abstractmethod
    def __call__(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """frames: (T, H, W, 3) uint8 RGB, or an iterable of (H, W, 3) frames (read once, in order)."""

    def config(self) -> Dict:
        """Options that change the landmarks (part of the resume fingerprint)."""
        return {"class": type(self).__name__}


class MediapipeLandmarker(AbsFaceLandmarker):
    """MediaPipe Face Mesh, tracking over the frames of a clip (see the module docstring).

    Args:
        min_detection_confidence: face detector threshold.
        min_tracking_confidence: below it the mesh re-runs the detector on the next frame.
    """

    def __init__(self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5):
        try:
            from mediapipe.python.solutions import face_mesh  # noqa: F401
        except ImportError as e:
            raise PrepError(
                f"the mediapipe face backend needs the mediapipe package ({e}); install it with "
                "tools/install.sh (pip install --no-deps mediapipe==0.10.21 attrs flatbuffers absl-py "
                "'protobuf>=6.31.1,<7'), or use --mode dlib"
            ) from None
        self.min_detection_confidence = float(min_detection_confidence)
        self.min_tracking_confidence = float(min_tracking_confidence)
        self._index = np.asarray(MEDIAPIPE_TO_IBUG68)

    def config(self) -> Dict:
        return dict(super().config(), min_detection_confidence=self.min_detection_confidence,
                    min_tracking_confidence=self.min_tracking_confidence)

    def __call__(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        from mediapipe.python.solutions import face_mesh

        rows = []
        with face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False,
                                min_detection_confidence=self.min_detection_confidence,
                                min_tracking_confidence=self.min_tracking_confidence) as mesh:
            for frame in frames:
                height, width = frame.shape[:2]
                result = mesh.process(np.ascontiguousarray(frame))
                if not result.multi_face_landmarks:
                    rows.append(np.full((NUM_POINTS, 2), np.nan))
                    continue
                points = result.multi_face_landmarks[0].landmark
                xy = np.array([(points[i].x, points[i].y) for i in self._index])
                rows.append(xy * (width, height))
        return np.array(rows, dtype=np.float64).reshape(len(rows), NUM_POINTS, 2)


def default_dlib_predictor() -> str:
    """shape_predictor_68_face_landmarks.dat from the face-recognition-models wheel (found without
    importing it: its __init__ imports pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PrepError(
            "the dlib face backend needs shape_predictor_68_face_landmarks.dat: pip install "
            "--no-deps face-recognition-models==0.3.0, or pass predictor_path (e.g. Debian's "
            "libdlib-data /usr/share/dlib/shape_predictor_68_face_landmarks.dat)"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "models", "shape_predictor_68_face_landmarks.dat")


class DlibLandmarker(AbsFaceLandmarker):
    """dlib HOG detector on every frame + the 68-point shape predictor.

    Args:
        predictor_path: the .dat model (default: from the face-recognition-models wheel).
        upsample: times the detector upsamples a frame (1 finds faces down to about 40 px, at
            about 4x the cost of 0, which needs about 80 px).
    """

    def __init__(self, predictor_path: Optional[str] = None, upsample: int = 1):
        try:
            import dlib  # noqa: F401
        except ImportError as e:
            raise PrepError(f"the dlib face backend needs dlib ({e}): pip install dlib-bin==20.0.1") from None
        self.predictor_path = predictor_path or default_dlib_predictor()
        if not os.path.isfile(self.predictor_path):
            raise PrepError(f"dlib shape predictor {self.predictor_path} does not exist")
        if upsample < 0:
            raise PrepError(f"upsample must be >= 0, got {upsample}")
        self.upsample = int(upsample)
        self._models = None

    def config(self) -> Dict:
        return dict(super().config(), predictor_path=self.predictor_path, upsample=self.upsample)

    def __getstate__(self):  # dlib objects do not pickle; workers load their own
        return dict(self.__dict__, _models=None)

    def __call__(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        import dlib

        if self._models is None:
            self._models = (dlib.get_frontal_face_detector(), dlib.shape_predictor(self.predictor_path))
        detector, predictor = self._models
        rows = []
        for frame in frames:
            frame = np.ascontiguousarray(frame)
            faces = detector(frame, self.upsample)
            if len(faces) == 0:
                rows.append(np.full((NUM_POINTS, 2), np.nan))
                continue
            face = max(faces, key=lambda r: r.width() * r.height())
            shape = predictor(frame, face)
            rows.append([(shape.part(i).x, shape.part(i).y) for i in range(NUM_POINTS)])
        return np.array(rows, dtype=np.float64).reshape(len(rows), NUM_POINTS, 2)


LANDMARKERS: Dict[str, Type[AbsFaceLandmarker]] = {"mediapipe": MediapipeLandmarker, "dlib": DlibLandmarker}


def build_landmarker(name: str, **conf) -> AbsFaceLandmarker:
    if name not in LANDMARKERS:
        raise PrepError(f"unknown face backend {name!r}; choose from {sorted(LANDMARKERS)}")
    try:
        return LANDMARKERS[name](**conf)
    except TypeError as e:
        raise PrepError(f"face backend {name}: bad options {conf}: {e}") from None
