// Errors of image handling. Images are hostile input: each error names the image and what
// in it is wrong; the stable `code` is what callers (daemon, CLI, tests) switch on.

export type ImageErrorCode =
  /** The ref names nothing (no such file or directory, or no manifest with that tag). */
  | 'IMAGE_NOT_FOUND'
  /** The file or directory is not an OCI layout, oci-archive or docker-archive. */
  | 'IMAGE_NOT_AN_IMAGE'
  /** A blob the image refers to is not there. */
  | 'IMAGE_BLOB_MISSING'
  /** A blob's content does not have the digest (or size) it is referred to by. */
  | 'IMAGE_DIGEST_MISMATCH'
  /** The index, a manifest or the config is not what the specs say it must be. */
  | 'IMAGE_BAD_MANIFEST'
  /** A layer entry would land outside the root (`..`, through a link leading out, a hard link to outside). */
  | 'IMAGE_UNSAFE_PATH'
  /** A layer is not a readable tar. */
  | 'IMAGE_BAD_LAYER'
  /** Something valid Lodger does not handle (zstd layers, another platform). */
  | 'IMAGE_UNSUPPORTED'
  /** The unpacked root would not fit in the image cache. */
  | 'IMAGE_TOO_LARGE'
  /** The image config names no command and the job gave none, or a user the image does not know. */
  | 'IMAGE_BAD_CONFIG'
  /** The image at the ref is not the one the job was submitted with. */
  | 'IMAGE_CHANGED'
  /** The cache itself failed (disk full, permissions). */
  | 'IMAGE_CACHE_FAILED';

export class ImageError extends Error {
  constructor(readonly code: ImageErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ImageError';
  }
}
