export interface SandboxResources {
  cpuCount: number; // CPUs worth of quota
  memoryMB: number; // hard memory limit
  pidsLimit: number; // maximum number of tasks
}
