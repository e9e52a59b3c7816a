"""An exact cache of VAE latent distributions and text embeddings.

The VAE and text encoder are frozen and the thesis uses no augmentation, so each image's latent
*distribution* (mean and std of ``vae.encode(x).latent_dist``) and each caption's embedding can be
computed once. Training then samples ``mean + std * noise`` every step, which is exactly what
encoding every step gives (``DiagonalGaussianDistribution.sample`` draws the same way).

Layout of one cache folder (``data.cache.dir/<key hash>/``)::

    manifest.json              the key (models, preprocessing, dataset), rows, shard list, sizes
    latents-00000.safetensors  mean, std (and mean_flip, std_flip when flips are on) per row
    text-00000.safetensors     one embedding per unique caption ("" always included)

A row hook (:class:`~poseguide.data.cache.format.RowExtras`) stores more per-row tensors in each
latent shard, its identity part of the key. With a reward stage in the config that is the rows'
*pseudo ground truth* (:class:`poseguide.pseudo.PseudoShards`: for every row without keypoints
of its own, the people ``pose.estimator`` finds on the original image); the cache itself knows
nothing of poses.

The package: :mod:`~poseguide.data.cache.format` (the key, the manifest, shard records and their
checks), :mod:`~poseguide.data.cache.build` (the shared build), :mod:`~poseguide.data.cache.reader`
(:class:`LatentCache`, :func:`find_cache`).

The folder name is a hash of the key, so a different model, resolution, resize mode or dataset
content gets its own folder. Shards are written atomically and the manifest last: a build that is
interrupted builds only the missing shards when run again and ends identical to an uninterrupted
one; a shard whose size or checksum differs from the manifest's record is built again.

Several processes share a build (``team``, :mod:`poseguide.utils.team`). Shard boundaries depend
only on the rows and ``shard_size``, and each shard is encoded whole by one process, in the same
VAE batches, so the folder is byte for byte the one a single process builds. Each phase is split
``rank, rank + world, ...`` and ends with one gather: (0) the main process reads the manifest,
every process gets its reading; (1) check the shards a complete manifest lists; (2) find which
latent shards on disk are reusable; (3) encode the missing ones (shared afresh, so a resumed
build is balanced too); (4)-(5) the same for the text shards of the captions gathered in (3);
then the main process writes the manifest from the gathered records, and a last gather lets every
process open it. No process reads another's shards while building; every phase waits for its
slowest share (about ``1/world`` of the work), not for the whole build.
"""

from poseguide.data.cache.build import CacheInfo, build_cache
from poseguide.data.cache.format import (
    CACHE_FORMAT,
    MANIFEST,
    CacheError,
    RowExtras,
    cache_key,
    damaged_shards,
    encode_latent_dist,
    sample_latents,
    shard_record,
)
from poseguide.data.cache.reader import LatentCache, find_cache

__all__ = ["CACHE_FORMAT", "MANIFEST", "CacheError", "CacheInfo", "LatentCache", "RowExtras",
           "build_cache", "cache_key", "damaged_shards", "encode_latent_dist", "find_cache",
           "sample_latents", "shard_record"]  # fmt: skip
