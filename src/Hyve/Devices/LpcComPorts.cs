// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Config;
using Hyve.Vmm;

namespace Hyve.Devices;

/// <summary>
/// The LPC bridge's four COM ports, built from the config tree as bhyve's pci_lpc.c lpc_init does: all four UARTs
/// exist at their legacy ports and IRQs; those with <c>lpc.comN.path</c> get that console backend (see
/// <see cref="ConsoleBackends"/>), the others drop output and never receive. Each UART's interrupt level drives
/// its ISA IRQ through <see cref="IIrqLines.IsaAssert"/>/<see cref="IIrqLines.IsaDeassert"/> (COM1 and COM3 share IRQ 4,
/// COM2 and COM4 IRQ 3; the IRQ lines count asserts, so sharing works).
/// </summary>
public sealed class LpcComPorts : IDisposable
{
    private readonly Uart16550[] _ports;
    private readonly PortBus _bus;

    private LpcComPorts(Uart16550[] ports, PortBus bus)
    {
        _ports = ports;
        _bus = bus;
    }

    /// <summary>COM1..COM4, in unit order.</summary>
    public IReadOnlyList<Uart16550> Ports => _ports;

    /// <summary>Creates the four UARTs, opens their backends and claims their ports on <paramref name="bus"/>.
    /// Throws <see cref="ConfigException"/> when a backend cannot be opened (nothing stays claimed or open then).</summary>
    public static LpcComPorts Create(ConfigTree config, PortBus bus, IIrqLines irqs)
    {
        var table = Uart16550.ComPorts;
        var ports = new Uart16550[table.Count];
        int built = 0;
        try
        {
            for (; built < table.Count; built++)
            {
                var com = table[built];
                string? spec = config.Get($"lpc.{com.Name}.path");
                IConsoleBackend? backend = spec is null ? null : ConsoleBackends.Create(spec);
                int irq = com.Irq;
                ports[built] = new Uart16550(com.Base, level =>
                {
                    if (level) irqs.IsaAssert(irq);
                    else irqs.IsaDeassert(irq);
                }, backend);
            }
            for (int i = 0; i < ports.Length; i++) bus.Register(table[i].Base, Uart16550.PortCount, ports[i]);
        }
        catch
        {
            for (int i = 0; i < built; i++)
            {
                bus.Unregister(table[i].Base, Uart16550.PortCount, ports[i]);
                ports[i].Backend?.Dispose();
            }
            throw;
        }
        return new LpcComPorts(ports, bus);
    }

    /// <summary>Resets every UART (VM reset); backends stay connected.</summary>
    public void Reset()
    {
        foreach (var p in _ports) p.Reset();
    }

    /// <summary>Flushes and closes the backends and releases the ports.</summary>
    public void Dispose()
    {
        var table = Uart16550.ComPorts;
        for (int i = 0; i < _ports.Length; i++)
        {
            _bus.Unregister(table[i].Base, Uart16550.PortCount, _ports[i]);
            _ports[i].Backend?.Dispose();
        }
    }
}
