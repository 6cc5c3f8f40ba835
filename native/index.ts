// Public door of the native addons.
export * from './kvm/index.ts';
