/** vramfit's library entry point: read a model's skeleton, summarise it, plan its placement. */
export { readModel, type ReadModelOptions } from './reader/read-model.js';
export { summarize, type ModelSummary } from './reader/summary.js';
export type { Skeleton, SkeletonModule, SkeletonTensor, AttentionFacts, BlockFacts } from './reader/skeleton.js';
export { moduleSizes } from './reader/sizes.js';
export { planFit, InfeasiblePlanError, type FitInput } from './planner/fit.js';
export { planAccelerate, AcceleratePlannerError } from './planner/accelerate/index.js';
export { parseMaxMemory, resolveBudgets } from './planner/budgets.js';
export { parseByteSize, formatBytes } from './planner/units.js';
export { detectInventory, simulatedInventory, type Inventory } from './planner/devices/inventory.js';
export { devicesForPlan } from './planner/devices-for-plan.js';
export type { Plan, DevicePlan, PlanDeviceSpec, Workload, Target } from './planner/plan.js';
export { VramfitError, InputError, FormatError } from './util/errors.js';
export { LoadedModel, type DeviceReport } from './engine/model.js';
export { loadModel, type LoadOptions } from './engine/load.js';
export { generate, type GenerateOptions, type GeneratedToken, type GenerationResult } from './engine/generate.js';
export { OutOfDeviceMemory } from './engine/device.js';
export { loadTokenizer, type TextTokenizer } from './engine/text/tokenizer.js';
