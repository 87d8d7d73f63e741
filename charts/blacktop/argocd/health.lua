-- Argo CD resource health for Blacktop's kinds (Environment, GoldenPath, ServiceRequest,
-- GuardrailPolicy). Blacktop's status follows kstatus: a Ready condition, Reconciling/Stalled when
-- they apply, and status.observedGeneration. Tested by tests/unit/test_argocd_health.py and, on
-- real objects, by tests/e2e/test_chart_rbac.py.
--
-- Degraded: Stalled=True, or Ready=False for a failure (the reasons below).
-- Progressing: no status yet, a generation not observed yet, Reconciling=True, or Ready not True.
-- Healthy: Ready=True for the current generation.

-- Ready=False reasons that mean "failed" (operator/blacktop/api/conditions.py), even while a retry
-- with backoff is scheduled: Argo CD should show red, not a spinner.
local failure_reasons = {
  InvalidSpec = true,
  NamespaceConflict = true,
  ApplyChildFailed = true,
  ModuleNotFound = true,
  InvalidSchema = true,
  ForbiddenProvisioner = true,
  ProviderNotAllowed = true,
  GoldenPathNotFound = true,
  EnvironmentNotFound = true,
  TierNotAllowed = true,
  InvalidParameters = true,
  PolicyDenied = true,
  PlanFailed = true,
  ApplyFailed = true,
  DestroyFailed = true,
  ProviderError = true,
  Timeout = true,
  RetriesExhausted = true,
  CompileError = true,
}

local function condition(conditions, ctype)
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function health(o)
  local hs = {}
  local status = o.status
  if status == nil or status.conditions == nil then
    hs.status = "Progressing"
    hs.message = "Waiting for Blacktop to report status"
    return hs
  end
  local generation = (o.metadata and o.metadata.generation) or 0
  local observed = status.observedGeneration or 0
  if observed < generation then
    hs.status = "Progressing"
    hs.message = "Waiting for Blacktop to observe generation " .. tostring(generation)
    return hs
  end
  local conditions = status.conditions
  local ready = condition(conditions, "Ready")
  local stalled = condition(conditions, "Stalled")
  local reconciling = condition(conditions, "Reconciling")
  if stalled ~= nil and stalled.status == "True" then
    hs.status = "Degraded"
    hs.message = stalled.message or stalled.reason or "Stalled"
    return hs
  end
  if ready ~= nil and ready.status == "False" and failure_reasons[ready.reason or ""] then
    hs.status = "Degraded"
    hs.message = ready.message or ready.reason
    return hs
  end
  if reconciling ~= nil and reconciling.status == "True" then
    hs.status = "Progressing"
    hs.message = reconciling.message or reconciling.reason or "Reconciling"
    return hs
  end
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = ready.message or "Ready"
    return hs
  end
  hs.status = "Progressing"
  if ready ~= nil then
    hs.message = ready.message or ready.reason or "Not ready yet"
  else
    hs.message = "Waiting for the Ready condition"
  end
  return hs
end

return health(obj)
