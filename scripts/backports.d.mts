export interface SourceFile { name: string; text: string }
export interface Mirror { uri: string; signedBy: string | null }
export function debianMirrors(files: SourceFile[], codename: string): Mirror[];
export function backportsEntry(files: SourceFile[], codename: string): string | null;
