// Owns the exit statuses (SPEC §2): what every command of bin-proxy ends with.

export const EXIT_OK = 0;
/** At least one binary failed (API, download, verification, install, restart, rollback, a rejected entry). */
export const EXIT_FAILED = 1;
/** A usage or configuration error. */
export const EXIT_CONFIG = 2;
