// Public door of small utilities shared by every part (they import nothing of Lodger's).
export { SerialQueue } from './serial-queue.ts';
export * from './ttrpc/index.ts';
