export interface SandboxResources {
  cpuCount: number; // CPUs worth of quota
  memoryMB: number; // hard memory limit
  pidsLimit: number; // maximum number of tasks
  /** Size of the sandbox's own disk (everything it writes); absent in records older than disks. */
  diskMB?: number;
}

/** The disk a sandbox gets when its request names none. */
export const DEFAULT_DISK_MB = 2048;
