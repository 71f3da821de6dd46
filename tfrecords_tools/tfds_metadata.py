"""Makes a converted directory a TensorFlow Datasets dataset as well.

Writes dataset_info.json and features.json (with TFDS's own writer,
tfds.folder_dataset.write_metadata) beside the shards, describing the records of
tfrecords_tools/features.py as a FeaturesDict whose flattened keys are exactly ours:

    image/encoded      Image(jpeg)  -> uint8 [H, W, 3] when TFDS decodes it
    image/id           Text
    image/class        ClassLabel   names = the build-time label set's landmark ids
    image/landmark_id, image/height, image/width, image/fold, image/clean   int64

Splits train/test/index with their per-shard example counts from the build, so
`tfds.builder_from_directory(out).as_dataset(split=tfds.even_splits('train', n)[i])`
reads the shards in place (no copy):

    builder = tfds.builder_from_directory("/data/gldv2-tfrecords")
    ds = builder.as_dataset(split="train")  # {"image": {"encoded": uint8 [H,W,3], ...}}
"""

from __future__ import annotations

import os
import tempfile

DATASET_NAME = "gldv2_tfrecords"
VERSION = "1.0.0"
FILENAME_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.tfrecord"


def feature_spec(class_names: list[str]):
    """The tfds.features.FeaturesDict of one record (class_names: label i's name)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    f = tfds.features
    return f.FeaturesDict(
        {
            "image": f.FeaturesDict(
                {
                    "encoded": f.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "id": f.Text(),
                    "class": f.ClassLabel(names=class_names),
                    "landmark_id": f.Scalar(dtype=tf.int64),
                    "height": f.Scalar(dtype=tf.int64),
                    "width": f.Scalar(dtype=tf.int64),
                    "fold": f.Scalar(dtype=tf.int64),
                    "clean": f.Scalar(dtype=tf.int64),
                }
            )
        }
    )


def write_tfds_metadata(
    output_dir: str,
    splits: dict[str, list[int]],
    num_bytes: dict[str, int],
    class_names: list[str],
    description: str,
) -> None:
    """Writes dataset_info.json and features.json into output_dir.

    Args:
      output_dir: the converted directory (local or gs://).
      splits: split name -> examples per shard, in shard order.
      num_bytes: split name -> total bytes of its shards.
      class_names: names of image/class (landmark ids as strings).
      description: free text stored in dataset_info.json.
    """
    import tensorflow as tf

    # TFDS writes through etils, which knows gs:// but not every tf.io.gfile scheme; it
    # writes into a local scratch dir and the files are copied with tf.io.gfile.
    with tempfile.TemporaryDirectory(prefix="gldjax-tfds-") as scratch:
        _write_local(scratch, splits, num_bytes, class_names, description)
        for name in sorted(os.listdir(scratch)):
            tf.io.gfile.copy(
                os.path.join(scratch, name), os.path.join(output_dir, name), overwrite=True
            )


def _write_local(
    output_dir: str,
    splits: dict[str, list[int]],
    num_bytes: dict[str, int],
    class_names: list[str],
    description: str,
) -> None:
    """What tfds.folder_dataset.write_metadata does, minus listing the (remote) shards."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import dataset_info, file_adapters, naming

    template = naming.ShardedFileTemplate(
        data_dir=output_dir,
        template=FILENAME_TEMPLATE,
        dataset_name=DATASET_NAME,
        filetype_suffix="tfrecord",
    )
    identity = dataset_info.DatasetIdentity(
        name=DATASET_NAME, version=tfds.core.Version(VERSION), data_dir=output_dir, module_name=""
    )
    info = dataset_info.DatasetInfo(
        builder=identity, features=feature_spec(class_names), description=description
    )
    info.set_file_format(file_adapters.FileFormat.TFRECORD)
    info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(
                    name=name,
                    shard_lengths=list(lengths),
                    num_bytes=int(num_bytes[name]),
                    filename_template=template.replace(split=name),
                )
                for name, lengths in splits.items()
            ]
        )
    )
    info.write_to_directory(output_dir)
