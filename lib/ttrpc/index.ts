// ttrpc (containerd's small RPC over unix sockets), client and server: what a containerd
// shim speaks. No npm package implements it.
export { TtrpcClient, type ClientCodec } from './client.ts';
export { TtrpcServer, type CallContext, type Handler, type MethodCodec, type ServerOptions } from './server.ts';
export { Code, codeName, TtrpcError, type CodeName } from './status.ts';
export { encodeFrame, FrameReader, HEADER_LENGTH, MAX_MESSAGE, TYPE_REQUEST, TYPE_RESPONSE } from './frame.ts';
export { decodeRequest, decodeResponse, encodeRequest, encodeResponse, ProtoWriter, WireError } from './wire.ts';
