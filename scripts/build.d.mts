/** The node bundle's path, relative to the repository. */
export declare const NODE_BUNDLE: string
/** Builds the node bundle (dist/main.mjs); returns its path relative to the repository. */
export declare function buildNode(): Promise<string>
