// Public door of the pure QoS controller.
export * from './decide.ts';
