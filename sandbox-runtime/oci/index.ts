// Public door of OCI images: open an image (layout, oci-archive, docker-archive), check it,
// and get its root from the cache (unpacked once per image ID, and packed into the ext4
// image QEMU attaches); what the image config says a job runs.
export { ImageError, type ImageErrorCode } from './errors.ts';
export { parseRef, type ImageKind, type ImageRunConfig } from './image.ts';
export { resolveUser, runSettings, type RunOverrides, type RunSettings } from './config.ts';
export { ImageCache, type CachedImage, type EntryMeta, type ImageCacheOptions, type ImageInfo, type ImageLease } from './cache.ts';
