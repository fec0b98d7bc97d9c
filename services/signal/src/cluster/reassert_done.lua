local p, me = ARGV[1], ARGV[2]
local cur, new = p..'ids:'..me, p..'ids:'..me..':new'
for _, id in ipairs(redis.call('SDIFF', cur, new)) do
  if redis.call('HGET', p..'id:'..id, 'node') == me then redis.call('DEL', p..'id:'..id) end
end
if redis.call('EXISTS', new) == 1 then
  redis.call('RENAME', new, cur)
else
  redis.call('DEL', cur)
end
return 1
