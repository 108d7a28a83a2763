"""Decode speed per 2D file format (covfuse.data.decoders.decode_file) at 64 px, one process.

    PYTHONPATH=src python benchmarks/decoders.py [--side 512] [--seconds 2]

Writes one smooth random image per format (side x side pixels, natural-looking: blurred noise, so
compressors behave as on photos) in a temporary folder, then decodes it repeatedly for ``--seconds``
and prints images per second and the file size.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _smooth(shape, dtype, seed=0):
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    planes = []
    for _ in range(shape[2] if len(shape) == 3 else 1):
        noise = Image.fromarray(rng.integers(0, 256, size=shape[:2], dtype=np.uint8), "L")
        planes.append(np.asarray(noise.filter(ImageFilter.GaussianBlur(3)), dtype=np.float64))
    x = np.stack(planes, -1) if len(shape) == 3 else planes[0]
    x = (x - x.min()) / max(np.ptp(x), 1)
    return (x * (255 if dtype == np.uint8 else 4095)).astype(dtype)


def write_files(folder: Path, side: int) -> dict[str, Path]:
    import pydicom
    import tifffile
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rgb8, grey8, grey12 = _smooth((side, side, 3), np.uint8), _smooth((side, side), np.uint8), _smooth((side, side), np.uint16)
    files = {}
    for name, array, kwargs in (("JPEG RGB 8-bit", rgb8, {"quality": 90}), ("PNG RGB 8-bit", rgb8, {}),
                                ("PNG grey 8-bit", grey8, {}), ("PNG grey 16-bit", grey12 * 16, {}), ("BMP RGB 8-bit", rgb8, {})):
        files[name] = folder / (name.replace(" ", "_") + "." + name.split()[0].lower().replace("jpeg", "jpg"))
        Image.fromarray(array).save(files[name], **kwargs)
    import png

    files["PNG RGB 16-bit (pypng)"] = folder / "rgb16.png"
    with open(files["PNG RGB 16-bit (pypng)"], "wb") as f:
        png.Writer(side, side, greyscale=False, bitdepth=16).write(f, (rgb8.astype(np.uint16) * 257).reshape(side, -1))
    files["TIFF RGB 8-bit"] = folder / "rgb8.tif"
    tifffile.imwrite(files["TIFF RGB 8-bit"], rgb8, photometric="rgb")
    files["TIFF grey 16-bit zlib"] = folder / "grey16.tif"
    tifffile.imwrite(files["TIFF grey 16-bit zlib"], grey12 * 16, compression="zlib")
    files["TIFF RGB 8-bit LZW (Pillow)"] = folder / "lzw.tif"
    Image.fromarray(rgb8).save(files["TIFF RGB 8-bit LZW (Pillow)"], compression="tiff_lzw")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, 0, 2048, 3000
    ds.PixelData = grey12.astype("<u2").tobytes()
    files["DICOM 12-bit MONOCHROME1 windowed"] = folder / "x.dcm"
    ds.save_as(files["DICOM 12-bit MONOCHROME1 windowed"], enforce_file_format=True)
    assert pydicom.dcmread(files["DICOM 12-bit MONOCHROME1 windowed"]).pixel_array.shape == (side, side)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    from covfuse.data.decoders import decode_file

    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(Path(tmp), args.side)
        print(f"{args.side}x{args.side} source -> {args.size} px, one process, CPU time")
        for name, path in files.items():
            decode_file(path, args.size)  # warm-up (imports)
            count, start = 0, time.process_time()
            while time.process_time() - start < args.seconds:
                decode_file(path, args.size)
                count += 1
            per = (time.process_time() - start) / count
            print(f"  {name:36s} {1 / per:8.0f} images/CPU-s  {per * 1e3:7.2f} ms  ({path.stat().st_size / 1024:6.0f} KiB)")


if __name__ == "__main__":
    main()
