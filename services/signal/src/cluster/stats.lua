local p = ARGV[1]
local nodes, ids = 0, 0
for _, node in ipairs(redis.call('SMEMBERS', p..'nodes')) do
  if redis.call('EXISTS', p..'node:'..node) == 1 then
    nodes = nodes + 1
    ids = ids + redis.call('SCARD', p..'ids:'..node)
  end
end
return {nodes, ids}
