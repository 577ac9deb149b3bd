"""Helper of calibration_memory.py: ONNX Runtime's own Percentile calibrator over N datalist images."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator  # noqa: E402

from effzoo import shard_io  # noqa: E402
from effzoo.calibration_split import balanced_selection  # noqa: E402

model, datalist, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = shard_io.read_datalist(datalist)
chosen = balanced_selection([r[3] for r in rows], n, 0)


class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = shard_io.iter_datalist_rows(datalist, chosen, 1)

    def get_next(self):
        b = next(self.it, None)
        return None if b is None else {"image_uint8_nhwc": b[0]}


cal = create_calibrator(model, [], augmented_model_path=str(Path(model).with_suffix(".aug.onnx")),
                        calibrate_method=CalibrationMethod.Percentile)
cal.collect_data(Reader())
cal.compute_data()
