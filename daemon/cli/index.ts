// Public door of the CLI's parts that others reuse (the demo, benches): the API client
// and the status rendering. The `lodger` command itself is main.ts.
export { connect, defaultSocket, isTcpEndpoint, setTls, type ApiClient, type TlsFiles, type Unary } from './client.ts';
export { renderStatus, type ApiJob } from './jobs.ts';
