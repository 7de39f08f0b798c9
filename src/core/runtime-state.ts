export interface SandboxResources {
  cpuCount: number; // CPUs worth of quota
  memoryMB: number; // hard memory limit
  pidsLimit: number; // maximum number of tasks
  /** Size of the sandbox's own disk (everything it writes); absent in records older than disks. */
  diskMB?: number;
}

/** The resources a sandbox gets when its request names none (the node's pool makes containers of them ahead). */
export const DEFAULT_CPU_COUNT = 2;
export const DEFAULT_MEMORY_MB = 512;
export const DEFAULT_PIDS_LIMIT = 512;

/** The disk a sandbox gets when its request names none. */
export const DEFAULT_DISK_MB = 2048;
