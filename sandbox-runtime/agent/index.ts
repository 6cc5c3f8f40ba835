// Public door of the host side of the guest agent: its wire protocol and client.
export * from './protocol.ts';
export { AgentClient, AgentExec } from './client.ts';
